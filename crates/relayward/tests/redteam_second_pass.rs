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
        .expect_text(250, "delivered as")
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
        let config = support::standard_config_with_network(key, net);
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

// ---------------------------------------------------------------------------------------------
// Finding 5: log injection
// ---------------------------------------------------------------------------------------------

/// An AUTH LOGIN user name is any bytes the client likes. Written raw into the text log, a
/// newline in it forged a second log line ("authenticated client=10.9.9.9") and an ESC sent
/// terminal escapes to whoever tails the log. Both arrive escaped now, on the one real line.
#[test]
fn auth_names_cannot_forge_log_lines_or_reach_the_terminal() {
    let server = TestServer::start(&standard_config(""));
    let forged = "bob\n2026-12-01T10:00:00.000000Z  INFO relayward_server::session: authenticated client=10.9.9.9 login=alice@example.test\u{1b}[2K\u{1b}[1A";
    server
        .smtp("mx")
        .send("EHLO attacker.outside.test")
        .expect(250)
        .starttls(server.ca())
        .send("EHLO attacker.outside.test")
        .expect(250)
        .send("AUTH LOGIN")
        .expect(334)
        .send(&support::base64(forged.as_bytes()))
        .expect(334)
        .send(&support::base64(b"wrong"))
        .expect_text(535, "5.7.8");
    server.wait_for_log("authentication failed");
    let log = server.log();
    assert!(!log.contains('\u{1b}'), "raw ESC in the log:\n{log}");
    let mentions: Vec<&str> = log.lines().filter(|l| l.contains("10.9.9.9")).collect();
    assert_eq!(mentions.len(), 1, "forged line in the log:\n{log}");
    assert!(
        mentions[0].contains("authentication failed") && mentions[0].contains(r"bob\n2026"),
        "{}",
        mentions[0]
    );
    assert!(mentions[0].contains(r"\x1b[2K"), "{}", mentions[0]);
}

// ---------------------------------------------------------------------------------------------
// Finding 10: `queue list` / `queue show` print what strangers wrote
// ---------------------------------------------------------------------------------------------

/// Waits (bounded) until the queue holds a message whose first recipient has a last error;
/// returns its `queue list --json` entry.
fn wait_deferred(server: &TestServer) -> serde_json::Value {
    let deadline = std::time::Instant::now() + support::WAIT;
    loop {
        let list = support::queue_json(server, &["list"]);
        if let Some(entry) = list
            .as_array()
            .and_then(|a| a.first())
            .filter(|e| !e["last_error"].is_null())
        {
            return entry.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing deferred: {list}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Header text comes from the client and reply text from the next hop; both may hold ESC
/// and direction overrides. The tables show them escaped (the log too), the JSON keeps them
/// exactly, escaped the JSON way.
#[test]
fn queue_tables_escape_header_and_reply_text() {
    let sink = support::rejecting_sink(
        "127.0.0.1",
        "451 4.7.1 not \u{1b}[31mtoday\u{1b}[0m \u{202e}DESOLC",
    )
    .addr;
    let server = TestServer::start(&standard_config(&format!(
        "[[route]]\ndomain = \"corp.example.net\"\nto = \"smtp://{sink}\"\nverify_recipients = false\n"
    )));
    let subject = "\u{1b}[2J\u{1b}[Hqueue is empty";
    server
        .smtp("mx")
        .send("EHLO attacker.outside.test")
        .expect(250)
        .send("MAIL FROM:<someone@other.test>")
        .expect(250)
        .send("RCPT TO:<stuck@corp.example.net>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(
            format!("Subject: {subject}\r\nX-Title: a\u{1b}]0;pwned\u{7}b\r\n\r\nbody\r\n.\r\n")
                .as_bytes(),
        )
        .expect_text(250, "queued as")
        .send("QUIT")
        .expect(221);
    let entry = wait_deferred(&server);
    let id = entry["id"].as_str().expect("id").to_string();
    let raw = |text: &str| text.contains(['\u{1b}', '\u{7}', '\u{202e}']);

    let table = support::queue_cmd(&server, &["list"]);
    assert!(!raw(&table), "raw control characters in:\n{table}");
    assert!(table.contains(r"not \x1b[31mtoday"), "{table}");
    let show = support::queue_cmd(&server, &["show", &id]);
    assert!(!raw(&show), "raw control characters in:\n{show}");
    assert!(
        show.contains(r"Subject: \x1b[2J\x1b[Hqueue is empty"),
        "{show}"
    );
    assert!(show.contains(r"X-Title: a\x1b]0;pwned\x07b"), "{show}");
    assert!(show.contains(r"\u{202e}DESOLC"), "{show}");

    // JSON escapes control characters (`\u001b`); U+202E is ordinary text to it.
    let json = support::queue_cmd(&server, &["show", &id, "--json"]);
    assert!(
        !json.contains(['\u{1b}', '\u{7}']),
        "raw control characters in:\n{json}"
    );
    let detail: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let subject_field = detail["headers"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["name"] == "Subject"))
        .expect("Subject");
    assert_eq!(
        subject_field["value"], subject,
        "JSON keeps the text exactly"
    );
    assert!(!raw(&server.log()), "raw control characters in the log");
}

// ---------------------------------------------------------------------------------------------
// Finding 6: queued mail was world-readable
// ---------------------------------------------------------------------------------------------

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(meta) => meta.permissions().mode() & 0o777,
        Err(err) => panic!("{}: {err}", path.display()),
    }
}

/// `queue/` and `msg/` were 0755 and message files 0644: every local user could read every
/// queued message. Directories are 0700 and files 0600 now, also for state written by the
/// `relayward queue` CLI; the TLS key stays 0600 and Maildirs 0700.
#[test]
fn queued_mail_keys_and_maildirs_are_private() {
    let sink = support::rejecting_sink("127.0.0.1", "451 4.3.0 later").addr;
    let server = TestServer::start(&standard_config(&format!(
        "[[route]]\ndomain = \"corp.example.net\"\nto = \"smtp://{sink}\"\nverify_recipients = false\n"
    )));
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO attacker.outside.test").expect(250);
    // The first waits in the queue; the second, for a local mailbox only, is delivered at once.
    for (rcpt, accepted) in [
        ("<stuck@corp.example.net>", "queued as"),
        ("<alice@example.test>", "delivered as"),
    ] {
        smtp.send("MAIL FROM:<someone@other.test>")
            .expect(250)
            .send(&format!("RCPT TO:{rcpt}"))
            .expect(250)
            .send("DATA")
            .expect(354)
            .raw(b"Subject: private\r\n\r\nfor your eyes only\r\n.\r\n")
            .expect_text(250, accepted);
    }
    smtp.send("QUIT").expect(221);
    let id = wait_deferred(&server)["id"]
        .as_str()
        .expect("id")
        .to_string();
    support::queue_cmd(&server, &["hold", &id]);
    let mail = server.wait_for_mail("example.test", "alice", 1);
    assert!(mail[0].contains("for your eyes only"));

    let data = server.data_dir();
    let queue = data.join("queue");
    for dir in [
        data.clone(),
        queue.clone(),
        queue.join("msg"),
        queue.join("tmp"),
        queue.join("corrupt"),
        data.join("tls"),
        data.join("mail"),
        data.join("mail")
            .join("example.test")
            .join("alice")
            .join("new"),
    ] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    let mut files = vec![queue.join("lock"), data.join("tls").join("key.pem")];
    files.extend(server.maildir_new("example.test", "alice"));
    for entry in std::fs::read_dir(queue.join("msg")).expect("msg/") {
        files.push(entry.expect("entry").path());
    }
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "json")),
        "no state file written: {files:?}"
    );
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
}

// ---------------------------------------------------------------------------------------------
// Findings 3 and 4: password guessing
// ---------------------------------------------------------------------------------------------

/// A loopback address of its own for simulated client number `n` of group `group`.
fn loopback(group: u8, n: u8) -> std::net::IpAddr {
    std::net::IpAddr::from([127, 0, group, n])
}

/// An mx session from `source` after EHLO, STARTTLS and EHLO, ready for AUTH; reads wait up
/// to a minute (a wrong password is answered after a delay of up to 16 s).
fn ready_for_auth(server: &TestServer, source: std::net::IpAddr) -> support::Smtp {
    let mut smtp = support::Smtp::connect_from(server.addr("mx"), source);
    smtp.read_timeout(Duration::from_secs(60))
        .send("EHLO client.outside.test")
        .expect(250)
        .starttls(server.ca())
        .send("EHLO client.outside.test")
        .expect(250);
    smtp
}

/// Waits (bounded) until the log has said `needle` at least `count` times.
fn wait_for_log_count(server: &TestServer, needle: &str, count: usize) {
    let deadline = std::time::Instant::now() + support::WAIT;
    while server.log().matches(needle).count() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "log said {needle:?} fewer than {count} times:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a wrong password for `login` from `source` and returns as soon as the server has
/// counted the failure (its log line comes before the delay), leaving the `535` unread: the
/// session is returned so that it stays open while the test goes on.
fn guess(server: &TestServer, source: std::net::IpAddr, login: &str) -> support::Smtp {
    let failures = server.log().matches("authentication failed").count();
    let mut smtp = ready_for_auth(server, source);
    smtp.auth_plain(login, "not the password");
    wait_for_log_count(server, "authentication failed", failures + 1);
    smtp
}

/// The reply to AUTH PLAIN with the right password, from `source`.
fn log_in(server: &TestServer, source: std::net::IpAddr, login: &str) -> (u16, Vec<String>) {
    let mut smtp = ready_for_auth(server, source);
    smtp.auth_plain(login, support::PASSWORD);
    smtp.read_reply().expect("a reply to AUTH")
}

/// Runs `clients` sessions at once, each from one of `addresses` loopback addresses of
/// `group`; each sends AUTH PLAIN with a wrong password for alice, all together. Returns the
/// reply codes with their enhanced codes.
fn parallel_guesses(server: &TestServer, group: u8, addresses: u8, clients: usize) -> Vec<String> {
    let barrier = std::sync::Barrier::new(clients);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                let barrier = &barrier;
                let source = loopback(group, (i % usize::from(addresses)) as u8 + 1);
                scope.spawn(move || {
                    let mut smtp = ready_for_auth(server, source);
                    barrier.wait();
                    smtp.auth_plain("alice@example.test", &format!("guess {i}"));
                    match smtp.read_reply() {
                        Some((code, lines)) => {
                            let enhanced = lines[0].split(' ').next().unwrap_or("").to_string();
                            format!("{code} {enhanced}")
                        }
                        None => format!("no reply:\n{}", smtp.transcript()),
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    })
}

/// Peak resident memory of a process, from /proc (KiB).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Finding 3: 400 wrong passwords at once from 20 addresses took 403 threads and 3.7 GB (each
/// argon2 check holds 19 MiB, and nothing limited how many ran). Now a few checks run at
/// once in memory of their own: every attempt is answered `535` or `454 4.7.0`, the server
/// stays small, and alice still logs in from an address of her own.
#[test]
fn parallel_wrong_passwords_are_bounded() {
    let server = TestServer::start(&standard_config(""));
    let replies = parallel_guesses(&server, 1, 20, 200);
    let mut counts = std::collections::BTreeMap::new();
    for reply in &replies {
        *counts.entry(reply.as_str()).or_insert(0) += 1;
    }
    assert!(
        counts
            .keys()
            .all(|r| *r == "535 5.7.8" || *r == "454 4.7.0"),
        "{counts:?}"
    );
    // At most 5 guesses per address were checked at all (finding 4a).
    assert!(
        counts.get("535 5.7.8").copied().unwrap_or(0) <= 100,
        "{counts:?}"
    );
    let peak = peak_rss_kib(server.pid());
    assert!(peak < 256 * 1024, "server peaked at {peak} KiB");
    let (code, _) = log_in(&server, loopback(0, 1), "alice@example.test");
    assert_eq!(code, 235, "{}", server.log());
}

/// Finding 4a: twenty guesses sent in parallel from one address were all checked, though
/// `auth_failures_per_ip = 5`: the failure was counted only after each check. Counted when
/// admitted, five are checked and fifteen refused; then the address is banned, even for the
/// right password.
#[test]
fn parallel_guesses_from_one_address_count_against_each_other() {
    let server = TestServer::start(&standard_config(""));
    let mut replies = parallel_guesses(&server, 2, 1, 20);
    replies.sort();
    let checked = replies.iter().filter(|r| *r == "535 5.7.8").count();
    let refused = replies.iter().filter(|r| *r == "454 4.7.0").count();
    assert_eq!((checked, refused), (5, 15), "{replies:?}");
    let (code, text) = log_in(&server, loopback(2, 1), "alice@example.test");
    assert_eq!(code, 454, "{text:?}");
}

/// Finding 4b: a successful login as *any* account cleared the address's failures, so an
/// attacker with one account of her own guessed another's password between logins. A
/// success clears only its own login's failures now: the fifth guess bans as ever.
#[test]
fn logging_into_ones_own_account_does_not_wipe_guesses_at_another() {
    let server = TestServer::start(&standard_config(""));
    let mallory = loopback(3, 1);
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(guess(&server, mallory, "alice@example.test"));
        open.push(guess(&server, mallory, "alice@example.test"));
        assert_eq!(log_in(&server, mallory, "bob@example.test").0, 235);
    }
    open.push(guess(&server, mallory, "alice@example.test"));
    let (code, text) = log_in(&server, mallory, "bob@example.test");
    assert_eq!(code, 454, "five guesses at alice, yet: {text:?}");
}

/// Finding 4c: once alice's login had 10 failures from anywhere, one typo from her own
/// address got her `454` with the right password. One typo is forgiven now.
#[test]
fn an_attack_on_her_login_does_not_lock_the_owner_out() {
    let server = TestServer::start(&standard_config(""));
    let mut open = Vec::new();
    for n in 1..=10 {
        for _ in 0..2 {
            open.push(guess(&server, loopback(4, n), "alice@example.test"));
        }
    }
    // The attackers' addresses are refused for alice's login now...
    assert_eq!(log_in(&server, loopback(4, 1), "alice@example.test").0, 454);
    // ...but alice at home, one typo and then the right password, is let in.
    let home = loopback(5, 1);
    open.push(guess(&server, home, "alice@example.test"));
    let (code, text) = log_in(&server, home, "alice@example.test");
    assert_eq!(code, 235, "{text:?}\n{}", server.log());
}

/// The embedded default with one user (the set-up an admin starts from), on ports of its own.
fn embedded_default_with_a_user() -> String {
    let (code, default) = support::run_with_timeout(
        std::process::Command::new(support::binary()).args(["check-config", "--show-default"]),
        support::WAIT,
    );
    assert_eq!(code, Some(0), "{default}");
    let config = default
        .replace("127.0.0.1:2525", "127.0.0.1:0")
        .replace("127.0.0.1:2587", "127.0.0.1:0")
        .replace("./relayward-data", "DATA_DIR");
    format!(
        "{config}\n[[user]]\nlogin = \"alice@localhost\"\npassword_hash = \"{}\"\n",
        support::password_hash()
    )
}

/// Issue 11 item 3: an admin who probes her own server from a trusted network must not lock
/// its real users out. Trusted addresses are slowed by failed logins but never banned: after
/// five probe runs and five failed logins from loopback (the embedded default trusts it), a
/// user's right password from there still works.
#[test]
fn probing_from_a_trusted_network_locks_nobody_out() {
    let server = TestServer::start(&embedded_default_with_a_user());
    let target = server.addr("mx").to_string();
    for _ in 0..5 {
        let (code, output) = support::run_with_timeout(
            std::process::Command::new(support::binary()).args(["probe", &target]),
            support::WAIT,
        );
        assert!(code.is_some(), "probe did not finish:\n{output}");
    }
    // The probe skips its failed-AUTH trick when the relay is open to it anyway; failed
    // logins as it would make them, so that the rule is tested whatever the probe decides.
    let here = loopback(0, 1);
    let mut open = Vec::new();
    for n in 0..5 {
        open.push(guess(
            &server,
            here,
            &format!("rw-no-such-user-{n}@localhost"),
        ));
    }
    let (code, text) = log_in(&server, here, "alice@localhost");
    assert_eq!(code, 235, "{text:?}\n{}", server.log());
}

// ---------------------------------------------------------------------------------------------
// Bounces are a last resort, and small
// ---------------------------------------------------------------------------------------------

/// The internal server behind the route: its name and reply are its own business.
const INTERNAL_REFUSAL: &str =
    "550 5.1.1 <nobody@corp.example.net>: no such user at sink.corp.internal";

/// A `[[route]]` to an internal server on 127.0.0.2 that refuses every recipient.
fn routed_to_a_refusing_server() -> (TestServer, std::net::SocketAddr) {
    let sink = support::rejecting_sink("127.0.0.2", INTERNAL_REFUSAL).addr;
    let server = TestServer::start(&standard_config(&format!(
        "[[route]]\ndomain = \"corp.example.net\"\nto = \"smtp://{sink}\"\nverify_recipients = false\n"
    )));
    (server, sink)
}

/// A transaction from `smtp` (after EHLO) to the refusing route with `content`.
fn send_to_route(smtp: &mut support::Smtp, from: &str, content: &[u8]) {
    smtp.send(&format!("MAIL FROM:<{from}>"))
        .expect(250)
        .send("RCPT TO:<nobody@corp.example.net>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(content)
        .expect_text(250, "queued as");
}

/// The `text/rfc822-headers` part of a DSN.
fn quoted_headers(dsn: &str) -> &str {
    dsn.split("Content-Description: Undelivered Message Headers\r\n\r\n")
        .nth(1)
        .and_then(|rest| rest.split("\r\n--=_relayward_").next())
        .unwrap_or_else(|| panic!("no headers part in:\n{dsn}"))
}

/// Finding 1's second door: a stranger's message to a route domain whose internal server
/// refuses the recipient was bounced, with its whole header section (4.5 MB arrived intact),
/// to whatever sender the stranger wrote. Now that bounce carries at most 16 KiB of headers,
/// never the body, and neither the internal server's address, nor its name, nor its reply
/// text. A user who authenticated still gets the whole report.
#[test]
fn a_strangers_bounce_is_small_and_names_no_internal_host() {
    let (server, sink) = routed_to_a_refusing_server();
    let mut content = Vec::new();
    for n in 0..2000 {
        content.extend_from_slice(format!("X-Payload-{n}: {}\r\n", "spam ".repeat(10)).as_bytes());
    }
    content.extend_from_slice(b"Subject: buy now\r\n\r\nBODY-MARKER visit our shop\r\n.\r\n");
    // The victim: a forged sender whose mailbox the test can read.
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO attacker.outside.test").expect(250);
    send_to_route(&mut smtp, "alice@example.test", &content);
    smtp.send("QUIT").expect(221);
    let bounce = server.wait_for_mail("example.test", "alice", 1).remove(0);
    assert!(bounce.contains("multipart/report"), "{bounce}");
    let headers = quoted_headers(&bounce);
    assert!(
        headers.len() <= 16 * 1024,
        "{} octets of headers",
        headers.len()
    );
    assert!(headers.contains("X-Payload-0:"), "{headers}");
    for secret in [
        "BODY-MARKER",
        "X-Payload-1999",
        "127.0.0.2",
        &sink.port().to_string(),
        "sink.corp.internal",
        "no such user",
    ] {
        assert!(
            !bounce.contains(secret),
            "{secret:?} in the bounce:\n{bounce}"
        );
    }
    assert!(bounce.contains("Status: 5.1.1"), "{bounce}");

    // The same failure for an authenticated user: the whole report, to her own address.
    let mut smtp = server.smtp("submission");
    smtp.send("EHLO laptop.example.test")
        .expect(250)
        .starttls(server.ca())
        .send("EHLO laptop.example.test")
        .expect(250)
        .auth_plain("bob@example.test", support::PASSWORD)
        .expect(235);
    send_to_route(
        &mut smtp,
        "bob@example.test",
        b"Subject: hello\r\n\r\nhi\r\n.\r\n",
    );
    let full = server.wait_for_mail("example.test", "bob", 1).remove(0);
    assert!(
        full.contains("no such user at sink.corp.internal"),
        "{full}"
    );
}

/// Never a bounce for a bounce: mail that is itself an automatic reply (`Auto-Submitted:`
/// other than `no`) or a report (`multipart/report`) is not bounced, whoever sent it, so two
/// mail systems cannot bounce notifications back and forth (the null sender was already
/// covered).
#[test]
fn automatic_replies_and_reports_are_never_bounced() {
    let (server, _) = routed_to_a_refusing_server();
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO attacker.outside.test").expect(250);
    for headers in [
        "Auto-Submitted: auto-replied\r\nSubject: Out of office",
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"b\"",
    ] {
        let content = format!("{headers}\r\n\r\n--b\r\n\r\nreport\r\n--b--\r\n.\r\n");
        send_to_route(&mut smtp, "alice@example.test", content.as_bytes());
    }
    // And a person's message, which is bounced.
    send_to_route(
        &mut smtp,
        "alice@example.test",
        b"Auto-Submitted: no\r\nSubject: me\r\n\r\nhi\r\n.\r\n",
    );
    smtp.send("QUIT").expect(221);
    // Once the queue is empty every bounce there was to make has been delivered.
    support::wait_queue_empty(&server);
    let bounces = server.wait_for_mail("example.test", "alice", 1);
    assert_eq!(bounces.len(), 1, "{bounces:#?}");
    assert!(bounces[0].contains("Subject: me"), "{}", bounces[0]);
    assert_eq!(
        server
            .log()
            .matches("automatic reply or report: not bounced")
            .count(),
        2,
        "{}",
        server.log()
    );
}
