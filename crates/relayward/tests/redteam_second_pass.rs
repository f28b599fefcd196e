//! Red-team tests, second pass (issue 10): ways a stranger exhausted relayward, got around its
//! limits, forged its logs or made it send mail to third parties. End to end through the real
//! binary; each test failed on the code before its fix.

mod support;

use std::time::Duration;

use support::{TestServer, check_config, serve_refuses, spooled, standard_config};

/// A stranger's transaction to alice, up to the `354`.
fn stranger_data(server: &TestServer) -> support::Smtp {
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO attacker.outside.test")
        .expect(250)
        .send("MAIL FROM:<someone@other.test>")
        .expect(250)
        .send("RCPT TO:<alice@example.test>")
        .expect(250)
        .send("DATA")
        .expect(354);
    smtp
}

// ---------------------------------------------------------------------------------------------
// Finding 8: NUL in DATA
// ---------------------------------------------------------------------------------------------

/// A NUL anywhere in the content (the `<CRLF>NUL.<CRLF>` vector is in redteam.rs) is refused
/// with a 5xx at the real end of data; nothing is queued and the session stays in step.
#[test]
fn nul_anywhere_in_data_is_refused_and_nothing_is_queued() {
    let server = TestServer::start(&standard_config(""));
    for content in [
        &b"Subject: a\0b\r\n\r\nhello\r\n.\r\n"[..],
        b"Subject: x\r\n\r\nhello\0\r\n.\r\n",
        b"\0\r\n.\r\n",
    ] {
        let mut smtp = stranger_data(&server);
        smtp.raw(content)
            .expect_text(554, "5.6.0")
            .send("MAIL FROM:<someone@other.test>")
            .expect(250)
            .send("QUIT")
            .expect(221);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(spooled(&server), 0);
    assert!(server.maildir_new("example.test", "alice").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Loops, part 1: hop count
// ---------------------------------------------------------------------------------------------

fn with_received_headers(count: usize) -> Vec<u8> {
    let mut content = Vec::new();
    for hop in 0..count {
        content.extend_from_slice(
            format!(
                "Received: from hop{hop}.other.test ([192.0.2.{}])\r\n\tby hop{}.other.test; Wed, 25 Nov 2026 10:48:15 +0000\r\n",
                hop % 250,
                hop + 1
            )
            .as_bytes(),
        );
    }
    content.extend_from_slice(
        b"Subject: round and round\r\n\r\nReceived: in the body does not count\r\n.\r\n",
    );
    content
}

/// RFC 5321 §6.3: a message that already carries more than 50 `Received:` fields is looping;
/// it is refused at the end of DATA (`554 5.4.6`) and not queued. 50 still pass.
#[test]
fn more_than_fifty_received_headers_is_a_loop() {
    let server = TestServer::start(&standard_config(""));
    stranger_data(&server)
        .raw(&with_received_headers(51))
        .expect_text(554, "5.4.6")
        .send("QUIT")
        .expect(221);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(spooled(&server), 0);
    stranger_data(&server)
        .raw(&with_received_headers(50))
        .expect_text(250, "queued as")
        .send("QUIT")
        .expect(221);
    let mail = server.wait_for_mail("example.test", "alice", 1);
    assert!(
        mail[0].starts_with("Received: from attacker.outside.test"),
        "{}",
        mail[0]
    );
    assert!(mail[0].contains("by hop50.other.test"), "{}", mail[0]);
}

// ---------------------------------------------------------------------------------------------
// Finding 9: IPv6 networks as wide as an IPv4 /8
// ---------------------------------------------------------------------------------------------

/// An IPv6 /16 holds the networks of tens of thousands of organisations; the IPv6 equivalent
/// of the IPv4 /8 limit is a /32. Wider trusted networks and proxies are refused by `serve`
/// and `check-config`, and the message says what to write instead.
#[test]
fn ipv6_trusted_networks_wider_than_a_32_are_refused() {
    for (key, net) in [
        ("trusted_networks", "2a01::/16"),
        ("trusted_networks", "2001:db8::/31"),
        ("trusted_proxies", "2a01::/24"),
    ] {
        let relay = match key {
            "trusted_networks" => format!("trusted_networks = [\"{net}\"]"),
            _ => format!("trusted_networks = []\n{key} = [\"{net}\"]"),
        };
        let config = standard_config("").replace("trusted_networks = []", &relay);
        let (code, output) = check_config(&config);
        assert_eq!(
            code,
            Some(78),
            "check-config accepted {key} {net}:\n{output}"
        );
        for words in [net, "wider than a /32", "2001:db8:1::/48"] {
            assert!(output.contains(words), "{key} {net}: {output}");
        }
        let output = serve_refuses(&config);
        assert!(output.contains("wider than a /32"), "{output}");
    }
    let config = standard_config("").replace(
        "trusted_networks = []",
        "trusted_networks = [\"2001:db8::/32\", \"2001:db8:1::/48\"]",
    );
    let (code, output) = check_config(&config);
    assert_eq!(code, Some(0), "{output}");
}
