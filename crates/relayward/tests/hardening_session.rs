//! Issue 5, the defences that live in the session and the listener, each proven end to end
//! through the real binary: per-user sending limits, the PROXY protocol (trusted proxies only),
//! pregreet and unauthorised pipelining, timeouts in every state, and hostile input.
//!
//! Each test is written so that it fails when its defence is switched off.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use relayward_testkit::config::config_with_relay;
use support::{PASSWORD, Smtp, TestServer, WAIT, queue_list, standard_config};

/// An authenticated session on the implicit-TLS listener.
fn submit_as(server: &TestServer, login: &str) -> Smtp {
    let mut smtp = Smtp::connect_tls(server.addr("submissions"), server.ca());
    smtp.send("EHLO laptop.example.test")
        .expect(250)
        .auth_plain(login, PASSWORD)
        .expect(235);
    smtp
}

fn send_message(smtp: &mut Smtp, from: &str, to: &str) {
    smtp.send(&format!("MAIL FROM:<{from}>"))
        .expect(250)
        .send(&format!("RCPT TO:<{to}>"))
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: hi\r\n\r\nhello\r\n.\r\n")
        .expect_text(250, "queued as");
}

/// Nothing was acknowledged behind the test's back: the queue is empty, no message file is
/// spooled, and no local mailbox got mail. Waits a moment first, so a message that was being
/// queued would have arrived.
fn assert_nothing_queued(server: &TestServer) {
    std::thread::sleep(Duration::from_millis(300));
    let list = queue_list(server);
    let json = &list[list.find('[').unwrap_or(0)..];
    assert_eq!(json.trim(), "[]", "queue is not empty:\n{list}");
    let spool = server.data_dir().join("queue").join("msg");
    let spooled: Vec<_> = std::fs::read_dir(&spool)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(spooled.is_empty(), "spooled: {spooled:?}");
    for local in ["alice", "bob", "postmaster"] {
        assert!(
            server.maildir_new("example.test", local).is_empty(),
            "mail delivered to {local}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Per-user sending limits (the compromised-account case)
// ---------------------------------------------------------------------------------------------

#[test]
fn user_message_limit_answers_451_at_mail_and_names_the_user() {
    let server = TestServer::start(&standard_config("[limits]\nmessages_per_user_per_hour = 2"));
    let mut smtp = submit_as(&server, "alice@example.test");
    send_message(&mut smtp, "alice@example.test", "bob@example.test");
    send_message(&mut smtp, "alice@example.test", "friend@other.test");
    smtp.send("MAIL FROM:<alice@example.test>")
        .expect_text(451, "4.7.1")
        .send("QUIT")
        .expect(221);
    // The budget belongs to the user, not the session.
    submit_as(&server, "alice@example.test")
        .send("MAIL FROM:<alice@example.test>")
        .expect_text(451, "4.7.1");
    // Other users are not affected.
    let mut bob = submit_as(&server, "bob@example.test");
    send_message(&mut bob, "bob@example.test", "alice@example.test");
    server.wait_for_log_count("user sending limit reached", 2);
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("user sending limit reached"))
        .unwrap_or_default();
    assert!(line.contains("alice@example.test"), "{line}");
    assert!(line.contains("2 messages per hour"), "{line}");
}

#[test]
fn user_recipient_limit_answers_451_at_rcpt() {
    let server = TestServer::start(&standard_config(
        "[limits]\nrecipients_per_user_per_hour = 3",
    ));
    let mut smtp = submit_as(&server, "bob@example.test");
    smtp.send("MAIL FROM:<bob@example.test>")
        .expect(250)
        .send("RCPT TO:<a@other.test>")
        .expect(250)
        .send("RCPT TO:<b@other.test>")
        .expect(250)
        .send("RCPT TO:<b@other.test>")
        .expect(250) // a duplicate spends nothing
        .send("RCPT TO:<c@other.test>")
        .expect(250)
        .send("RCPT TO:<d@other.test>")
        .expect_text(451, "4.7.1")
        .send("DATA")
        .expect(354)
        .raw(b"Subject: three\r\n\r\nhi\r\n.\r\n")
        .expect(250)
        .send("MAIL FROM:<bob@example.test>")
        .expect(250)
        .send("RCPT TO:<alice@example.test>")
        .expect_text(451, "4.7.1");
    server.wait_for_log_count("user sending limit reached", 2);
    assert!(server.log().contains("bob@example.test"));
}

#[test]
fn auth_bans_survive_sighup() {
    let server = TestServer::start(&standard_config("[limits]\nauth_failures_per_ip = 1"));
    // One failure bans this IP from AUTH.
    let mut guesser = Smtp::connect_tls(server.addr("submissions"), server.ca());
    guesser
        .send("EHLO guesser.test")
        .expect(250)
        .auth_plain("bob@example.test", "wrong")
        .expect_text(535, "5.7.8")
        .auth_plain("bob@example.test", PASSWORD)
        .expect_text(454, "4.7.0");

    server.signal("HUP");
    server.wait_for_log_count("configuration reloaded", 1);

    Smtp::connect_tls(server.addr("submissions"), server.ca())
        .send("EHLO guesser.test")
        .expect(250)
        .auth_plain("bob@example.test", PASSWORD)
        .expect_text(454, "4.7.0");
}

#[test]
fn user_budget_survives_sighup() {
    let server = TestServer::start(&standard_config("[limits]\nmessages_per_user_per_hour = 1"));
    let mut smtp = submit_as(&server, "alice@example.test");
    send_message(&mut smtp, "alice@example.test", "bob@example.test");
    smtp.send("QUIT").expect(221);
    server.signal("HUP");
    server.wait_for_log_count("configuration reloaded", 1);
    submit_as(&server, "alice@example.test")
        .send("MAIL FROM:<alice@example.test>")
        .expect_text(451, "4.7.1");
}

// ---------------------------------------------------------------------------------------------
// 2. PROXY protocol: honoured from trusted proxies only
// ---------------------------------------------------------------------------------------------

/// Trusts 127.0.0.2 as a network (relay allowed), never the test client's 127.0.0.1.
fn proxy_config(proxies: &str) -> String {
    config_with_relay(
        &format!("trusted_networks = [\"127.0.0.2/32\"]\ntrusted_proxies = [{proxies}]"),
        // Long enough that a pregreeting test client is never too slow to be caught.
        "[limits]\ngreet_pause = \"1s\"",
    )
}

fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (source, destination) else {
        panic!("IPv4 only");
    };
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[0x21, 0x11, 0, 12]);
    out.extend_from_slice(&s.ip().octets());
    out.extend_from_slice(&d.ip().octets());
    out.extend_from_slice(&s.port().to_be_bytes());
    out.extend_from_slice(&d.port().to_be_bytes());
    out
}

#[test]
fn proxy_v1_from_a_trusted_proxy_names_the_real_client() {
    let server = TestServer::start(&proxy_config("\"127.0.0.1/32\""));
    let mut smtp = Smtp::connect_silent(server.addr("mx"));
    smtp.raw(b"PROXY TCP4 127.0.0.2 127.0.0.1 40001 25\r\n")
        .expect(220)
        .send("EHLO behind.proxy.test")
        .expect(250);
    assert!(
        smtp.last_lines()[0].contains("[127.0.0.2]"),
        "{:?}",
        smtp.last_lines()
    );
    smtp.send("MAIL FROM:<app@other.test>")
        .expect(250)
        .send("RCPT TO:<victim@other.test>")
        .expect(250) // 127.0.0.2 is a trusted network
        .send("RSET")
        .expect(250);
    send_message(&mut smtp, "app@other.test", "alice@example.test");
    let mail = server.wait_for_mail("example.test", "alice", 1);
    assert!(
        mail[0].starts_with("Received: from behind.proxy.test ([127.0.0.2])"),
        "{}",
        mail[0]
    );
}

#[test]
fn proxy_v2_is_honoured_before_implicit_tls() {
    let server = TestServer::start(&proxy_config("\"127.0.0.1/32\""));
    let addr = server.addr("submissions");
    let header = v2_header("127.0.0.2:40002".parse().unwrap(), addr);
    let mut smtp = Smtp::connect_tls_after(addr, &header, server.ca());
    smtp.send("EHLO behind.proxy.test").expect(250);
    assert!(
        smtp.last_lines()[0].contains("[127.0.0.2]"),
        "{:?}",
        smtp.last_lines()
    );
}

#[test]
fn trusted_proxy_without_a_header_is_closed_without_a_banner() {
    let server = TestServer::start(&proxy_config("\"127.0.0.1/32\""));
    Smtp::connect_silent(server.addr("submission"))
        .send("EHLO direct.client.test")
        .expect_closed();
    Smtp::connect_silent(server.addr("mx"))
        .raw(b"PROXY TCP4 127.0.0.2 127.0.0.1 40001\r\n")
        .expect_closed();
}

#[test]
fn proxy_and_xclient_from_an_untrusted_peer_are_unknown_commands() {
    let server = TestServer::start(&proxy_config("\"127.0.0.3/32\""));
    let mut smtp = server.smtp("mx");
    smtp.send("PROXY TCP4 127.0.0.2 127.0.0.1 40001 25")
        .expect_text(500, "5.5.1")
        .send("XCLIENT ADDR=127.0.0.2")
        .expect_text(500, "5.5.1")
        .send("EHLO liar.test")
        .expect(250);
    assert!(
        smtp.last_lines()[0].contains("[127.0.0.1]"),
        "{:?}",
        smtp.last_lines()
    );
    smtp.send("MAIL FROM:<spammer@other.test>")
        .expect(250)
        .send("RCPT TO:<victim@other.test>")
        .expect_text(554, "5.7.1");
    // Before the banner it is pregreeting; on the submission listener (no greet pause) it
    // is read as a command. Neither makes the client trusted.
    Smtp::connect_silent(server.addr("mx"))
        .raw(b"PROXY TCP4 127.0.0.2 127.0.0.1 40001 25\r\n")
        .expect_text(554, "5.5.1")
        .expect_closed();
    let mut smtp = Smtp::connect_silent(server.addr("submission"));
    smtp.raw(b"PROXY TCP4 127.0.0.2 127.0.0.1 40001 25\r\n")
        .expect(220)
        .expect_text(500, "5.5.1")
        .send("EHLO liar.test")
        .expect(250);
    assert!(
        smtp.last_lines()[0].contains("[127.0.0.1]"),
        "{:?}",
        smtp.last_lines()
    );
    // A v2 header is binary garbage to SMTP: refused, connection closed.
    let header = v2_header("127.0.0.2:1".parse().unwrap(), server.addr("submission"));
    let mut smtp = Smtp::connect_silent(server.addr("submission"));
    smtp.expect(220).raw(&header);
    expect_refusals_until_closed(&mut smtp);
    assert_nothing_queued(&server);
}

/// Reads replies until the server closes; every one must be an error.
#[track_caller]
fn expect_refusals_until_closed(smtp: &mut Smtp) {
    let mut replies = 0;
    while let Some((code, _)) = smtp.read_reply() {
        assert!(code >= 500, "accepted: {code}\n{}", smtp.transcript());
        replies += 1;
        assert!(replies < 20, "{}", smtp.transcript());
    }
    assert!(replies > 0, "{}", smtp.transcript());
}

// ---------------------------------------------------------------------------------------------
// 3. Pregreet and unauthorised pipelining
// ---------------------------------------------------------------------------------------------

#[test]
fn client_talking_before_the_banner_is_refused() {
    // Long enough that the test client is never too slow to talk first, even on a busy machine.
    let server = TestServer::start(&standard_config("[limits]\ngreet_pause = \"1s\""));
    Smtp::connect_silent(server.addr("mx"))
        .raw(b"EHLO impatient.robot.test\r\n")
        .expect_text(554, "5.5.1")
        .expect_closed();
    // Waiting for the banner is all it takes; it comes after the pause.
    let start = Instant::now();
    let mut patient = server.smtp("mx");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    patient.send("EHLO patient.mta.test").expect(250);
    // Submission clients are authenticated users' programs: no pause.
    let start = Instant::now();
    server.smtp("submission");
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
}

/// Trusted networks are not put through the pregreet test: an application on the admin's own
/// network that talks first still gets its banner and its mail through.
#[test]
fn trusted_clients_skip_the_pregreet_test() {
    let server = TestServer::start(&config_with_relay(
        "trusted_networks = [\"127.0.0.1/32\"]",
        "[limits]\ngreet_pause = \"1s\"",
    ));
    Smtp::connect_silent(server.addr("mx"))
        .raw(b"EHLO app.internal.test\r\n")
        .expect(220)
        .expect(250)
        .send("QUIT")
        .expect(221);
}

#[test]
fn pipelining_before_ehlo_is_refused() {
    let server = TestServer::start(&standard_config(""));
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
    assert_nothing_queued_but(&server, 1);
}

/// Like [`assert_nothing_queued`], but `count` messages reached alice.
fn assert_nothing_queued_but(server: &TestServer, count: usize) {
    let mail = server.wait_for_mail("example.test", "alice", count);
    assert_eq!(mail.len(), count);
}

// ---------------------------------------------------------------------------------------------
// 4. Timeouts in every state, before TLS too
// ---------------------------------------------------------------------------------------------

fn timeout_config() -> String {
    standard_config(
        "[limits]\ngreeting_timeout = \"1s\"\ncommand_timeout = \"1s\"\ndata_block_timeout = \"1s\"\nsession_timeout = \"3s\"",
    )
}

/// Expects a 421 with `enhanced` and the close, within `limit` of `start`.
#[track_caller]
fn expect_421_within(smtp: &mut Smtp, enhanced: &str, start: Instant, limit: Duration) {
    smtp.expect_text(421, enhanced).expect_closed();
    let took = start.elapsed();
    assert!(took < limit, "took {took:?}");
}

#[test]
fn silent_clients_get_421_in_every_state() {
    let server = TestServer::start(&timeout_config());
    let bound = Duration::from_millis(2500);
    // Silent after the banner (greeting timeout).
    let start = Instant::now();
    let mut smtp = server.smtp("mx");
    expect_421_within(&mut smtp, "4.4.2", start, bound);
    // Silent after EHLO (command timeout).
    let mut smtp = server.smtp("submission");
    smtp.send("EHLO quiet.test").expect(250);
    let start = Instant::now();
    expect_421_within(&mut smtp, "4.4.2", start, bound);
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
    let start = Instant::now();
    expect_421_within(&mut smtp, "4.4.2", start, bound);
    assert_nothing_queued(&server);
}

#[test]
fn silent_clients_before_tls_are_cut_off() {
    let server = TestServer::start(&timeout_config());
    // Implicit TLS: connected, no ClientHello.
    let start = Instant::now();
    let mut tcp = TcpStream::connect(server.addr("submissions")).expect("connect");
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut buf = [0u8; 64];
    assert_eq!(tcp.read(&mut buf).ok(), Some(0), "expected a close");
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "{:?}",
        start.elapsed()
    );
    // STARTTLS answered, then no ClientHello.
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO quiet.test")
        .expect(250)
        .send("STARTTLS")
        .expect(220);
    let start = Instant::now();
    smtp.expect_closed();
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "{:?}",
        start.elapsed()
    );
}

/// After the banner sends EHLO, after its reply `after_ehlo` (pipelined commands), then
/// `pattern` one octet every 500 ms until the server closes; returns what the server said and
/// how long it took from the connect.
fn slowloris(addr: SocketAddr, after_ehlo: &[u8], pattern: &[u8]) -> (String, Duration) {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let start = Instant::now();
    let mut heard = Vec::new();
    let mut stage = 0;
    let mut pattern = pattern.iter().cycle();
    loop {
        assert!(start.elapsed() < WAIT, "never cut off; heard {heard:?}");
        let mut buf = [0u8; 4096];
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => heard.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
        let text = String::from_utf8_lossy(&heard).into_owned();
        let sent = match stage {
            0 if text.starts_with("220 ") => tcp.write_all(b"EHLO slow.test\r\n"),
            1 if text.contains("\r\n250 ") => tcp.write_all(after_ehlo),
            2.. => tcp.write_all(&[*pattern.next().unwrap_or(&b'x')]),
            _ => continue,
        };
        stage = (stage + 1).min(2);
        if sent.is_err() {
            break;
        }
    }
    (
        String::from_utf8_lossy(&heard).into_owned(),
        start.elapsed(),
    )
}

#[test]
fn slowloris_clients_are_cut_off_by_the_session_limit() {
    let server = TestServer::start(&timeout_config());
    // A command line that never ends, one octet at a time.
    let (heard, took) = slowloris(server.addr("submission"), b"NOOP ", b"NOOP ");
    assert!(heard.contains("421 4.4.2"), "{heard}");
    assert!(took < Duration::from_millis(4500), "{took:?}");
    // Complete commands, slowly: each arrives in time, the session still ends.
    let (heard, took) = slowloris(server.addr("mx"), b"NOOP\r\n", b"NOOP\r\n");
    assert!(heard.contains("421 4.4.2"), "{heard}");
    assert!(took < Duration::from_millis(4500), "{took:?}");
    // Message content, slowly.
    let opening = b"MAIL FROM:<a@other.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n";
    let (heard, took) = slowloris(server.addr("mx"), opening, b"x");
    assert!(heard.contains("421 4.4.2"), "{heard}");
    assert!(took < Duration::from_millis(4500), "{took:?}");
    assert_nothing_queued(&server);
}

// ---------------------------------------------------------------------------------------------
// 5. Hostile input
// ---------------------------------------------------------------------------------------------

fn open_transaction(server: &TestServer) -> Smtp {
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<a@other.test>")
        .expect(250)
        .send("RCPT TO:<alice@example.test>")
        .expect(250);
    smtp
}

#[test]
fn nul_bytes_and_invalid_utf8_in_commands_are_refused() {
    let server = TestServer::start(&standard_config(""));
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
        .raw(b"RCPT TO:<alic\xc3\xa9@example.test>\r\n")
        .expect_text(500, "5.5.2")
        .send("NOOP")
        .expect(250);
}

#[test]
fn ten_thousand_rcpts_hit_the_recipient_limit_then_the_error_limit() {
    // A trusted client may relay, so each RCPT is a new accepted recipient.
    let server = TestServer::start(&config_with_relay(
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
    for _ in 0..10 {
        smtp.expect_text(452, "4.5.3");
    }
    smtp.expect_text(421, "4.7.0").expect_closed();
    assert_nothing_queued(&server);
}

#[test]
fn auth_with_garbage_base64_is_refused_and_the_session_goes_on() {
    let server = TestServer::start(&standard_config(""));
    let mut smtp = Smtp::connect_tls(server.addr("submissions"), server.ca());
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
    let server = TestServer::start(&standard_config(""));
    let mut smtp = Smtp::connect_tls(server.addr("submissions"), server.ca());
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
    // Just under the limit is an ordinary (bad) response, not an overflow.
    let mut smtp = Smtp::connect_tls(server.addr("submissions"), server.ca());
    smtp.send("EHLO laptop.example.test")
        .expect(250)
        .send("AUTH LOGIN")
        .expect(334)
        .send(&"QUFB".repeat(12_000 / 4))
        .expect(334);
}

#[test]
fn client_dropping_mid_data_queues_nothing() {
    let server = TestServer::start(&standard_config(""));
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
    server.wait_for_log_count("disconnect", 2);
    assert_nothing_queued(&server);
}

#[test]
fn smtp_smuggling_vectors_are_refused_and_nothing_is_queued() {
    let server = TestServer::start(&standard_config(""));
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
    let server = TestServer::start(&standard_config(""));
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

#[test]
fn plaintext_mail_from_injected_after_starttls_is_discarded() {
    let server = TestServer::start(&standard_config(""));
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
    let server = TestServer::start(&standard_config("[limits]\nmax_errors = 5"));
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO confused.test").expect(250);
    for _ in 0..4 {
        smtp.send("FOO").expect_text(500, "5.5.1");
    }
    smtp.send("RCPT TO:<alice@example.test>")
        .expect_text(503, "5.5.1")
        .expect_text(421, "4.7.0")
        .expect_closed();
}

#[test]
fn message_size_is_advertised_and_enforced_at_mail_and_in_data() {
    let server = TestServer::start(&standard_config("[limits]\nmax_message_size = 10000"));
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO client.outside.test").expect(250);
    assert!(
        smtp.last_lines().iter().any(|l| l == "SIZE 10000"),
        "{:?}",
        smtp.last_lines()
    );
    smtp.send("MAIL FROM:<a@other.test> SIZE=10001")
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
