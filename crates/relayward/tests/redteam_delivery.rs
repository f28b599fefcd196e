//! Red-team findings against the delivery side, end to end through the real binary: what a
//! stranger's message can make the runner do after it was accepted.

#[path = "support/dns.rs"]
mod dns;
mod support;

use std::time::{Duration, Instant};

use dns::{DnsServer, Zone};
use support::{TestServer, spooled, standard_config, wait_queue_empty};

/// A `[[route]]` to a port where nothing listens: every attempt defers.
fn unreachable_route() -> String {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    format!("[[route]]\ndomain = \"corp.example.test\"\nto = \"smtp://{addr}\"\n")
}

fn queue_one_for_the_route(server: &TestServer) -> String {
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<friend@outside.test>")
        .expect(250)
        .send("RCPT TO:<eve@corp.example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: stuck\r\n\r\nwaits for the route\r\n.\r\n")
        .expect_text(250, "queued as");
    let reply = smtp.last_lines().join(" ");
    smtp.send("QUIT").expect(221);
    reply
        .rsplit(' ')
        .next()
        .expect("queue id in the reply")
        .to_string()
}

/// Finding 7: a message past its lifetime whose content could not be read was tried about a
/// thousand times a second, forever (the expired recipients were dropped from the update, so
/// the next attempt never moved). It is moved aside now, with one log line.
#[test]
fn an_unreadable_message_is_moved_aside_not_retried_in_a_loop() {
    let config = standard_config(&format!(
        "{}\n[delivery]\nmax_queue_lifetime = \"3s\"\n",
        unreachable_route()
    ));
    let server = TestServer::start(&config);
    let id = queue_one_for_the_route(&server);
    // Once the deferral is recorded, its file is damaged (as a disk error or a careless admin
    // would) before the next attempt, which comes when the lifetime ends.
    let msg = server.data_dir().join("queue").join("msg");
    let recorded = Instant::now() + Duration::from_secs(10);
    while !msg.join(format!("{id}.json")).exists() {
        assert!(
            Instant::now() < recorded,
            "deferral not recorded:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let file = msg.join(format!("{id}.eml"));
    let text = std::fs::read(&file).expect("queued file");
    std::fs::write(&file, &text[..text.len() - 10]).expect("truncate");

    let deadline = Instant::now() + Duration::from_secs(15);
    let corrupt = server.data_dir().join("queue").join("corrupt");
    while !corrupt.join(format!("{id}.eml")).exists() {
        assert!(
            Instant::now() < deadline,
            "not moved aside; log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_queue_empty(&server);
    assert_eq!(spooled(&server), 0);
    std::thread::sleep(Duration::from_millis(500));
    let log = server.log();
    let reads = log.matches("cannot read message content").count()
        + log.matches("message moved to").count();
    assert!(
        reads <= 2,
        "{reads} attempts on an unreadable message:\n{log}"
    );
    assert!(
        std::fs::read_to_string(corrupt.join(format!("{id}.reason")))
            .expect("reason")
            .contains("content"),
    );
}

/// Finding 1, first half: `"a>b"@corp.example.test` is valid RFC 5321, so a `[[route]]` took
/// it from a stranger; the delivery client then refused `<`/`>` as a permanent 5.1.3 and the
/// bounce went to the stranger's forged sender. One rule now decides both: refused at RCPT.
/// The same holds for senders (MAIL), whose every relayed copy would fail the same way.
#[test]
fn addresses_the_client_would_refuse_are_refused_at_rcpt_and_mail() {
    let server = TestServer::start(&standard_config(&unreachable_route()));
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO attacker.outside.test")
        .expect(250)
        .send("MAIL FROM:<\"v>w\"@third.test>")
        .expect_text(553, "5.1.7")
        .send("MAIL FROM:<victim@third.test>")
        .expect(250)
        .send("RCPT TO:<\"a>b\"@corp.example.test>")
        .expect_text(553, "5.1.3")
        .send("RCPT TO:<\"<x>\"@corp.example.test>")
        .expect_text(553, "5.1.3")
        .send("DATA")
        .expect_text(554, "5.5.1")
        .send("QUIT")
        .expect(221);
    assert_eq!(spooled(&server), 0);
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Finding 2: nothing stopped a message from going round. With loopback trusted (the
/// embedded default), mail for a domain whose MX is this very server was delivered to its own
/// listener, which queued it again — 2,493 times in 12 seconds. The runner now skips its own
/// listeners as next hops, and when nothing else is left the mail "loops back to myself" and
/// bounces; the session accepted it exactly once.
#[test]
fn an_mx_pointing_back_to_this_server_bounces_instead_of_looping() {
    let port = free_port();
    let dns = DnsServer::start(
        Zone::new()
            .mx("loop.test", 10, "mx.loop.test")
            .a("mx.loop.test", std::net::Ipv4Addr::LOCALHOST),
    );
    let config = standard_config(&format!(
        "[delivery]\nmx_port = {port}\n\n[dns]\nnameservers = [\"{}\"]\n",
        dns.addr
    ))
    .replacen(
        "address = \"127.0.0.1:0\"",
        &format!("address = \"127.0.0.1:{port}\""),
        1,
    )
    .replace(
        "trusted_networks = []",
        "trusted_networks = [\"127.0.0.1/32\"]",
    );
    let server = TestServer::start(&config);
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO app.example.test")
        .expect(250)
        .send("MAIL FROM:<alice@example.test>")
        .expect(250)
        .send("RCPT TO:<someone@loop.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: round and round\r\n\r\nhello\r\n.\r\n")
        .expect_text(250, "queued as")
        .send("QUIT")
        .expect(221);
    let bounce = server.wait_for_mail("example.test", "alice", 1);
    assert!(bounce[0].contains("loops back to myself"), "{}", bounce[0]);
    wait_queue_empty(&server);
    let accepted = server.log().matches("message queued").count();
    assert_eq!(accepted, 1, "accepted {accepted} times:\n{}", server.log());
}
